from fedgov.cli import main

main()
