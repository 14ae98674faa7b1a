"""`python -m lightfit.predict ...`: runs lightfit.prediction (the code lives there).

Only the command line should use this module. In Python, `from lightfit import predict` is
the Keras-style function (keras_style.py); importing this module would shadow it, so
import `lightfit.prediction` instead.
"""

if __name__ == "__main__":
    from lightfit.prediction import main

    main()
