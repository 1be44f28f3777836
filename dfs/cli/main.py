"""Entry point of the `dfs` command."""

from __future__ import annotations

import click

from dfs import __version__
from dfs.cli.admin import admin_group
from dfs.cli.devcluster import dev_cluster_command
from dfs.cli.files import FILE_COMMANDS
from dfs.cli.keys import keys_group
from dfs.cli.servers import chunkserver_command, gateway_command, master_command
from dfs.fuse.mount import mount_command, umount_command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="dfs")
def cli() -> None:
    """A distributed file system: master, chunkservers, HTTP gateway, FUSE mount and file commands."""


cli.add_command(master_command)
cli.add_command(chunkserver_command)
cli.add_command(gateway_command)
cli.add_command(dev_cluster_command)
cli.add_command(mount_command)
cli.add_command(umount_command)
admin_group.add_command(keys_group)  # dfs admin keys ...
cli.add_command(admin_group)
for command in FILE_COMMANDS:
    cli.add_command(command)


def main() -> None:
    cli(prog_name="dfs")
