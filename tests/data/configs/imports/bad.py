custom_imports = dict(imports=['detlab_no_such_module_xyz'], allow_failed_imports=False)
value = 1
