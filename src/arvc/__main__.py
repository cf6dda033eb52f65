from arvc.cli import main

main()
