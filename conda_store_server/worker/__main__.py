from conda_store_server.worker.app import main

main()
