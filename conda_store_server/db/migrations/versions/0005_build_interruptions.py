"""how often a build was given back to the queue by its worker stopping

Revision ID: 0005_build_interruptions
Revises: 0004_environment_list_index
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_build_interruptions"
down_revision = "0004_environment_list_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # not null with a server default: the builds already there count no interruption
    op.add_column("build", sa.Column("interruptions", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("build") as batch:
        batch.drop_column("interruptions")
