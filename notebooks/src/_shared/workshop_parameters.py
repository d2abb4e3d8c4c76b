MODEL = "gemma-3-270m"
TRAIN_SIZE = 64
TEST_SIZE = 16
# %load small_machine.py
