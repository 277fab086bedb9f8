custom_imports = dict(imports=['detlab_test_custom_mod'], allow_failed_imports=False)
value = 1
