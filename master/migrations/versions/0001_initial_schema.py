"""The schema as it was when migrations began (master/schema.py of that day).

Databases made before then by `create_all` have exactly these tables and are stamped at this
revision on their first start (master/migrate.py).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('chunks',
    sa.Column('chunk_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('inode', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('idx', sa.BigInteger(), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('chunk_id'),
    sa.UniqueConstraint('inode', 'idx', name='uq_chunks_inode_idx'),
    sqlite_autoincrement=True
    )
    op.create_table('dentries',
    sa.Column('parent', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.LargeBinary(), nullable=False),
    sa.Column('inode', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.PrimaryKeyConstraint('parent', 'name')
    )
    with op.batch_alter_table('dentries', schema=None) as batch_op:
        batch_op.create_index('ix_dentries_inode', ['inode'], unique=False)

    op.create_table('garbage',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('chunk_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('server_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.Column('not_before', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('garbage', schema=None) as batch_op:
        batch_op.create_index('ix_garbage_server', ['server_id', 'not_before'], unique=False)

    op.create_table('inodes',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('mode', sa.Integer(), nullable=False),
    sa.Column('uid', sa.BigInteger(), nullable=False),
    sa.Column('gid', sa.BigInteger(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('nlink', sa.Integer(), nullable=False),
    sa.Column('atime_ns', sa.BigInteger(), nullable=False),
    sa.Column('mtime_ns', sa.BigInteger(), nullable=False),
    sa.Column('ctime_ns', sa.BigInteger(), nullable=False),
    sa.Column('target', sa.LargeBinary(), nullable=True),
    sa.Column('goal', sa.Integer(), nullable=False),
    sa.Column('rdev', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sqlite_autoincrement=True
    )
    op.create_table('replicas',
    sa.Column('chunk_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('server_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('chunk_id', 'server_id')
    )
    with op.batch_alter_table('replicas', schema=None) as batch_op:
        batch_op.create_index('ix_replicas_server', ['server_id'], unique=False)

    op.create_table('server_states',
    sa.Column('server_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.PrimaryKeyConstraint('server_id')
    )
    op.create_table('servers',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('uuid', sa.String(length=128), nullable=False),
    sa.Column('url', sa.String(length=2048), nullable=False),
    sa.Column('capacity', sa.BigInteger(), nullable=False),
    sa.Column('used', sa.BigInteger(), nullable=False),
    sa.Column('free', sa.BigInteger(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('last_heartbeat', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('uuid'),
    sqlite_autoincrement=True
    )
    op.create_table('xattrs',
    sa.Column('inode', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.LargeBinary(), nullable=False),
    sa.Column('value', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('inode', 'name')
    )


def downgrade() -> None:
    op.drop_table('xattrs')
    op.drop_table('servers')
    op.drop_table('server_states')
    with op.batch_alter_table('replicas', schema=None) as batch_op:
        batch_op.drop_index('ix_replicas_server')

    op.drop_table('replicas')
    op.drop_table('inodes')
    with op.batch_alter_table('garbage', schema=None) as batch_op:
        batch_op.drop_index('ix_garbage_server')

    op.drop_table('garbage')
    with op.batch_alter_table('dentries', schema=None) as batch_op:
        batch_op.drop_index('ix_dentries_inode')

    op.drop_table('dentries')
    op.drop_table('chunks')
