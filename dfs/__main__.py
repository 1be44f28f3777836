from dfs.cli.main import main

main()
