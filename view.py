#!/usr/bin/env python
"""View a model folder in the browser (viser): the LR model and every SR run, one at a time.

    python view.py -m output/garden                 # http://localhost:8080
    python view.py -m output/garden --port 8081 --max_splats 1000000

Snap the camera to any train / test view (its ground truth and per-view metrics show when
render.py / metrics.py wrote them) and render it at N x with our renderer; renders are written to
OUT/view_renders/<iteration>_<view>_x<N>.png.
"Compare side by side" renders the browser's current camera for two of them (left | right, named on
the page) with our renderer and follows the camera (a background thread; the newest camera wins).
"""
import sys

from arguments import CLIArgumentParser, show_defaults
from utils.system_utils import run_cli


def build_parser():
    from viewer.splats import DEFAULT_MAX_SPLATS
    parser = CLIArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model_path", required=True, help="the model folder train.py wrote")
    parser.add_argument("--host", default="0.0.0.0", help="address to serve on (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8080, help="port of the web page")
    parser.add_argument("--max_splats", type=int, default=DEFAULT_MAX_SPLATS,
                        help="splats sent to the browser per model (a fixed-seed random subset; 0 = all); "
                             "renders always use every splat")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "cpu", "gsplat", "inria"),
                        help="rasterizer of the 'render this view' button")
    parser.add_argument("--device", default="auto", help="where renders run: auto, cpu, cuda or cuda:N")
    return show_defaults(parser)


def main(argv=None):
    args = build_parser().parse_args(argv)
    from utils.device import resolve_device
    from viewer.app import ViewerApp
    app = ViewerApp(args.model_path, host=args.host, port=args.port, max_splats=args.max_splats,
                    backend=args.backend, device=resolve_device(args.device))
    app.start()
    app.wait_forever()
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
