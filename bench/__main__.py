from bench.exporter import main

main()
