work_dir = '{{ fileDirname }}/work_dirs/{{ fileBasenameNoExtension }}'
source_name = '{{ fileBasename }}'
suffix = '{{ fileExtname }}'
