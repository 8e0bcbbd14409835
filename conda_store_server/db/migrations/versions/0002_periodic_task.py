"""periodic task claims

Revision ID: 0002_periodic_task
Revises: 0001_initial
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_periodic_task"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "periodic_task",
        sa.Column("name", sa.Unicode(length=64), nullable=False),
        sa.Column("next_run_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("periodic_task")
