# MAE ablation grid (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022).
#   snakemake                                   # tiny preset, local executor (profiles/default)
#   snakemake --config preset=smoke ablations=quick
#   snakemake --profile slurm --config preset=paper data_root=/datasets/imagenet
# One YAML per paper item in ablations/ becomes one `mae` config per cell (runs/{preset}/configs/);
# cells with the same resolved config share one run; results land in results/{preset}/.

from snakemake.utils import min_version

min_version("9.0")


configfile: "workflow/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/grid.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"


wildcard_constraints:
    stage="pretrain|finetune|linprobe",
    run_id="[0-9a-f]{12}",


localrules:
    all,
    render_config,
    write_manifest,
    prepare_mlflow,


onstart:
    check_data_before_jobs()


onerror:
    aggregate_partial_results()


# The job is done when every run of the grid is finished and the results are written. The runs are named
# here too: Snakemake reruns a job whose output is missing only for a consumer that runs, and results
# that exist (a partial aggregation, a run folder deleted to be redone) would not make one run.
rule all:
    input:
        get_tables(),
        get_findings(),
        get_figures(),
        get_metrics(),
    default_target: True
