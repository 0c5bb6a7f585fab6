"""Artifact Store measured against CNCF Distribution on the same machine (`make bench`,
`python -m bench --help`).

- `servers`: the two registries (and their storage) as processes on loopback;
- `client`: the checked registry operations, over aiohttp, with Docker's token flow;
- `images`: the bytes pushed (blobs, manifests, an OCI layout for skopeo);
- `harness`: targets, timing with CPU accounting, the concurrent load runner, skopeo;
- `scenarios`: the scenarios of issue 8, each bounded in time and count;
- `scaling`: how costs grow with 100,000 tags, 10,000 repositories and a 5 GiB blob;
- `profiling`: py-spy on the mesh's services while scenarios run;
- `report`: medians, min-max and ratios as a table and as JSON lines;
- `run`: the command line.
"""


class BenchError(Exception):
    """The benchmark cannot go on: a server did not start, or answered wrongly."""
