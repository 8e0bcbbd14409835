"""index of build artifacts by key, for the registry's blob lookups

Revision ID: 0006_build_artifact_key_index
Revises: 0005_build_interruptions
"""

from alembic import op

revision = "0006_build_artifact_key_index"
down_revision = "0005_build_interruptions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # every blob pull asks which builds reference `docker/blobs/<digest>`: without it, a scan
    op.create_index("ix_build_artifact_key", "build_artifact", ["key"])


def downgrade() -> None:
    op.drop_index("ix_build_artifact_key", table_name="build_artifact")
