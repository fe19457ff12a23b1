"""--help as a 3DGS user reads it: every flag states its default, closed sets show their choices."""
import io
import re
from contextlib import redirect_stdout

import pytest


def help_text(module):
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit):
        module.main(["--help"])
    return out.getvalue()


def option_blocks(text):
    """{flag: its help block} for every option line of an argparse --help page."""
    body = text.split("options:", 1)[1]
    blocks, current = {}, None
    for line in body.splitlines():
        m = re.match(r"^  (-\w, )?(--[\w-]+)", line)
        if m:
            current = m.group(2)
            blocks[current] = line
        elif current:
            blocks[current] += " " + line.strip()
    return blocks


@pytest.mark.parametrize("name", ["train", "render", "sr_refine", "metrics", "view"])
def test_every_flag_shows_its_default(name):
    module = __import__(name)
    blocks = option_blocks(help_text(module))
    assert len(blocks) > 4
    missing = [flag for flag, block in blocks.items() if flag != "--help" and "default" not in block]
    assert not missing, missing


def test_closed_sets_show_their_choices():
    import sr_refine
    from gaussian_renderer import BACKENDS
    from training.sr_loop import MODES
    text = help_text(sr_refine)
    assert "{" + ",".join(BACKENDS) + "}" in text
    assert "{" + ",".join(MODES) + "}" in text
