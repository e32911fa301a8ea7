"""The training and evaluation side of the models: the DeepSpeed training loop and its stages, the evaluation, and
the independent lip-sync meter. The networks themselves stay in models/."""
