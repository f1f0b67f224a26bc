"""The workflow's Python side, importable without Snakemake: the grid compiler (`workflow.grid`) and
the results pipeline (`workflow.results`). The Snakefile and the rule scripts import from here.

In a Snakefile, import with `from workflow.<module> import ...`: a plain `import workflow...` would
bind the name `workflow`, which Snakemake uses for its own Workflow object.
"""
