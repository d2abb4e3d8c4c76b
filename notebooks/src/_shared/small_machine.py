# Little memory (under ~8 GB free, e.g. Binder)? Use the tiny model, which learns nothing
# useful but runs every cell in seconds: uncomment the next line.
# import workbench as wb; MODEL = str(wb.build_tiny_model("runs/tiny"))
