"""index of the live environments in list order

Revision ID: 0004_environment_list_index
Revises: 0003_current_build_fk
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_environment_list_index"
down_revision = "0003_current_build_fk"
branch_labels = None
depends_on = None

LIVE = sa.text("deleted_on IS NULL")


def upgrade() -> None:
    op.create_index(
        "ix_environment_live_by_name",
        "environment",
        ["namespace_id", "name", "id"],
        sqlite_where=LIVE,
        postgresql_where=LIVE,
    )


def downgrade() -> None:
    op.drop_index("ix_environment_live_by_name", table_name="environment")
