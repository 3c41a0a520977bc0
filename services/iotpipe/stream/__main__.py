"""`python -m iotpipe.stream` (locally) and the SparkApplication's main file (on Kubernetes).

Absolute imports only: spark-submit runs this file as a script.
"""

from iotpipe.stream.main import main

if __name__ == "__main__":
    main()
