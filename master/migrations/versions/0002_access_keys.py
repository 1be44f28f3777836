"""Access keys (master/keys.py): the table of clients' keys, only hashes of their secrets.

Revision 0002, after 0001; made 2026-11-27.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('access_keys',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('key_id', sa.String(length=16), nullable=False),
    sa.Column('secret_sha256', sa.String(length=64), nullable=False),
    sa.Column('uid', sa.BigInteger(), nullable=False),
    sa.Column('gid', sa.BigInteger(), nullable=False),
    sa.Column('groups', sa.String(length=4096), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('expires', sa.Float(), nullable=True),
    sa.Column('revoked', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('name'),
    sa.UniqueConstraint('key_id')
    )


def downgrade() -> None:
    op.drop_table('access_keys')
