"""the foreign key of environment.current_build_id

Revision ID: 0003_current_build_fk
Revises: 0002_periodic_task

0001 declared it with `use_alter`, which `create_table` leaves to a separate ALTER that was
never issued: PostgreSQL databases have no such constraint (SQLite creates it inline).
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_current_build_fk"
down_revision = "0002_periodic_task"
branch_labels = None
depends_on = None

NAME = "fk_environment_current_build_id"


def _exists() -> bool:
    foreign_keys = sa.inspect(op.get_bind()).get_foreign_keys("environment")
    return any(key["constrained_columns"] == ["current_build_id"] for key in foreign_keys)


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite" and not _exists():
        op.create_foreign_key(NAME, "environment", "build", ["current_build_id"], ["id"])


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(NAME, "environment", type_="foreignkey")
