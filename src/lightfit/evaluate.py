"""`python -m lightfit.evaluate ...`: runs lightfit.evaluation (the code lives there).

Only the command line should use this module. In Python, `from lightfit import evaluate` is
the Keras-style function (keras_style.py); importing this module would shadow it, so
import `lightfit.evaluation` instead.
"""

if __name__ == "__main__":
    from lightfit.evaluation import main

    main()
