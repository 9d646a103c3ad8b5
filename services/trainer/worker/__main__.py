from services.trainer.worker.runner import main

# Guarded: the training child process is spawned, and re-imports this module as __mp_main__.
if __name__ == "__main__":
    main()
