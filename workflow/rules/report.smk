rule report:
    input:
        evals=expand(f"{R}/eval/{{method}}/{{bench}}.json", method=EVALUATED, bench=BENCHES),
        factors=f"{R}/lowrank/factors.zarr",
        metrics=[f"{R}/teacher_metrics.jsonl", *expand(f"{R}/students/{{method}}_metrics.jsonl", method=STUDENTS)],
        extra=[f"{R}/teacher_cot/summary.json"],
    output:
        md=f"{R}/report/report.md",
        html=f"{R}/report/report.html",
    log:
        f"{R}/logs/report.log",
    params:
        args=to_flags({**config["report"], "run": config["run"], "sweep": config["sweep"]}),
        evals=lambda wc, input: ",".join(input.evals),
        metrics=lambda wc, input: ",".join(input.metrics),
        extra=lambda wc, input: ",".join(input.extra),
    shell:
        "python -m lori.report --evals {params.evals} --factors {input.factors} --metrics {params.metrics} "
        "--extra {params.extra} --out {R}/report {params.args} > {log} 2>&1"
