from vp.cli import main

main()
