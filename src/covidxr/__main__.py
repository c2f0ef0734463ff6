from covidxr.cli import main

main()
