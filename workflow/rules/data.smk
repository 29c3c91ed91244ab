rule prepare_data:
    input:
        exclude=lambda wc: split_excludes(wc.split),
    output:
        report(f"{R}/data/{{split}}.jsonl", caption="../report/data.rst", category="data", labels={"split": "{split}"}),
    log:
        f"{R}/logs/prepare_data/{{split}}.log",
    params:
        args=lambda wc: args("prepare_data", split=wc.split),
        exclude=lambda wc, input: f"--exclude {','.join(input.exclude)}" if input.exclude else "",
    conda:
        CONDA_ENV
    shell:
        "python -m lori.prepare_data {params.args} {params.exclude} --out {output} > {log} 2>&1"
