"""region queries: the window of a handed-out patch the expert is asked to label

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 12:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('round_patches') as batch:
        batch.add_column(sa.Column('region', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('round_patches') as batch:
        batch.drop_column('region')
