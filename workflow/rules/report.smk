# The report: lori's own self-contained report.html plus its figures, each flagged for
# `snakemake --report` under the category of the stage it is about.
rule report:
    input:
        evals=expand(f"{R}/eval/{{method}}/{{bench}}.json", method=EVALUATED, bench=BENCHES),
        factors=f"{R}/lowrank/factors.zarr",
        metrics=[f"{R}/teacher_metrics.jsonl", *expand(f"{R}/students/{{method}}_metrics.jsonl", method=STUDENTS)],
        extra=[f"{R}/teacher_cot/summary.json"],
        # latent students' thoughts on the first problems of one benchmark (report.thought_examples)
        students=expand(f"{R}/students/{{method}}", method=STUDENTS),
        thought_data=f"{R}/data/{THOUGHT_BENCH}.jsonl",
    output:
        md=f"{R}/report/report.md",
        html=report(f"{R}/report/report.html", caption="../report/report.rst", category="evaluation",
                    labels={"figure": "lori report (tables, thoughts)"}),
        spectrum=figure("spectrum", "low-rank"),
        effective_rank=figure("effective_rank", "low-rank"),
        training=figure("training", "students"),
        accuracy=figure("accuracy_vs_tokens", "evaluation"),
        accuracy_compute=figure("accuracy_vs_compute", "students"),
        agreement=figure("agreement", "evaluation"),
    log:
        f"{R}/logs/report.log",
    params:
        args=args("report"),
        evals=lambda wc, input: ",".join(input.evals),
        metrics=lambda wc, input: ",".join(input.metrics),
        extra=lambda wc, input: ",".join(input.extra),
        students=lambda wc, input: f"--students {','.join(input.students)}" if input.students else "",
        out=lambda wc: f"{R}/report",   # a function: the report directory is derived, not a hard-coded prefix
    conda:
        CONDA_ENV
    shell:
        "python -m lori.report --evals {params.evals} --factors {input.factors} --metrics {params.metrics} "
        "--extra {params.extra} {params.students} --thought-data {input.thought_data} "
        "--out {params.out} {params.args} > {log} 2>&1"
