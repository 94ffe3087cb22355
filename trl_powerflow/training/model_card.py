"""The model card of a PowerFlow run: TRL's card with the paper's citation, and a local base model named by its
directory (TRL names only hub models and writes `[None](https://huggingface.co/None)` for a local one)."""

import os
import textwrap

# Title and arXiv id as the paper gives them; the authors' first names are not in the sources available here.
PAPER = {
    "title": "PowerFlow: Unlocking the Dual Nature of LLMs via Principled Distribution Matching",
    "id": "2603.18363",
    # docstyle-ignore
    "citation": textwrap.dedent("""\
        @inproceedings{chen2026powerflow,
            title         = {{PowerFlow: Unlocking the Dual Nature of LLMs via Principled Distribution Matching}},
            author        = {Chen and Chen and Li and Huang},
            booktitle     = {Proceedings of the International Conference on Machine Learning (ICML)},
            year          = 2026,
            eprint        = {2603.18363},
            archivePrefix = {arXiv},
        }"""),
}


def name_local_base(card_path: str, base: str | None) -> None:
    """In the card at `card_path`, name a local base model (a directory) by its path instead of TRL's `None` link."""
    if not base or not os.path.isdir(base) or not os.path.isfile(card_path):
        return
    with open(card_path) as f:
        text = f.read()
    text = text.replace("[None](https://huggingface.co/None)", f"the local model `{os.path.abspath(base)}`")
    with open(card_path, "w") as f:
        f.write(text)
