"""Resident data (master/resident.py): the bytes of small files, kept by the master.

Revision 0003, after 0002; made 2026-11-27.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('resident',
    sa.Column('inode', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('inode')
    )


def downgrade() -> None:
    op.drop_table('resident')
