"""archived builds, rollback through a restore, and the bytes of each build's prefix

Revision ID: 0007_build_archive
Revises: 0006_build_artifact_key_index
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_build_archive"
down_revision = "0006_build_artifact_key_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable / server default: the builds already there are live and restore nothing
    op.add_column("build", sa.Column("archived_on", sa.DateTime(), nullable=True))
    op.add_column(
        "build", sa.Column("current_after_restore", sa.Boolean(), server_default="0", nullable=False)
    )
    op.create_table(
        "build_storage_group",
        sa.Column("build_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.Unicode(length=64), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["build_id"], ["build.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("build_id", "key"),
    )


def downgrade() -> None:
    op.drop_table("build_storage_group")
    with op.batch_alter_table("build") as batch:
        batch.drop_column("current_after_restore")
        batch.drop_column("archived_on")
