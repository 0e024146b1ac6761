"""Where the data sets live: ``data_dir`` argument, else ``$MINIFT_DATA``, else ``~/.cache/minift/data``.

The layout under that folder is the one of the public distributions, one sub-folder per data set
(``agnews/test.csv``, ``restaurant/train.json``, ``bionlp2004/train/*.ann``, ...), as described in
``../shared/data/MANIFEST.md``.
"""
from __future__ import annotations

import os
from pathlib import Path

from minift.data.errors import DataError

ENV_VAR = "MINIFT_DATA"
DEFAULT_DATA_DIR = Path("~/.cache/minift/data")

# Where each data set folder can be obtained, quoted in "file not found" errors.
SOURCES = {
    "agnews": "AG News (Zhang et al. 2015), test.csv with a `label,title,description` header: "
    "https://github.com/mhjabreel/CharCnn_Keras/tree/master/data/ag_news_csv",
    "restaurant": "SemEval-2014 Task 4 restaurants as split by Xu et al. (train/dev/test.json): "
    "https://github.com/howardhsu/BERT-for-RRC-ABSA (asc/rest)",
    "laptop": "SemEval-2014 Task 4 laptops as split by Xu et al. (train/dev/test.json): "
    "https://github.com/howardhsu/BERT-for-RRC-ABSA (asc/laptop)",
    "acl_arc": "ACL-ARC citation intent (Jurgens et al. 2018), SciCite preprocessing: "
    "https://github.com/allenai/scicite",
    "sst2": "GLUE SST-2: https://gluebenchmark.com/tasks",
    "cola": "CoLA v1.0 (in_domain_train.tsv, in_domain_dev.tsv, out_of_domain_dev.tsv): https://nyu-mll.github.io/CoLA/",
    "stsb": "STS benchmark English CSVs (stsb-en-*.csv): https://github.com/PhilipMay/stsb-multi-mt",
    "mrpc": "Microsoft Research Paraphrase Corpus (GLUE train.tsv/dev.tsv and msr_paraphrase_test.txt): "
    "https://www.microsoft.com/en-us/download/details.aspx?id=52398",
    "financial_phrasebank": "Financial PhraseBank v1.0 (Malo et al. 2014): "
    "https://huggingface.co/datasets/takala/financial_phrasebank",
    "bionlp2004": "JNLPBA 2004 in brat standoff (train/*.txt+*.ann) and Genia4EReval1.iob2: "
    "https://github.com/spyysalo/jnlpba",
}


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data root: ``data_dir`` if given, else ``$MINIFT_DATA``, else ``~/.cache/minift/data``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return DEFAULT_DATA_DIR.expanduser()


def data_file(root: Path, dataset: str, *parts: str) -> Path:
    """``root/dataset/*parts``, or a :class:`DataError` naming the file, the search rule and the source."""
    path = root.joinpath(dataset, *parts)
    if not path.exists():
        raise DataError(
            f"data file not found: {path}\n"
            f"  looked in the data directory {root} (from --data-dir / data_dir=, else ${ENV_VAR}, "
            f"else {DEFAULT_DATA_DIR})\n"
            f"  get the public data set '{dataset}' from {SOURCES.get(dataset, 'its public source')} "
            f"and put it under {root / dataset}"
        )
    return path
