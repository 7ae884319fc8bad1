from vp.fastpath import main

main()
