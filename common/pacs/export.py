"""Command line: ``python -m common.pacs send|flush|status``.

Exit status: 0 when the outbox is empty at the end, 1 when something stays in it (failed, not due, held),
2 for bad arguments or settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence

from .credentials import CredentialsError
from .destination import Destination, DestinationError
from .outbox import FlushReport, Outbox, collect_dicom_files

__all__ = ["main", "build_parser"]

logger = logging.getLogger("common.pacs")
ENV_OUTBOX = "MTL_PACS_OUTBOX"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m common.pacs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common_args(p: argparse.ArgumentParser, dest_required: bool) -> None:
        p.add_argument("--outbox", default=os.environ.get(ENV_OUTBOX, "pacs_outbox"),
                       help=f"outbox folder (default ${ENV_OUTBOX} or ./pacs_outbox)")
        p.add_argument("--dest", required=dest_required,
                       help="destination JSON (dicomweb_url, ae_title, host, port, ...; no secrets)")
        p.add_argument("--credentials", help="credentials file (JSON or netrc, mode 600); default $MTL_PACS_CREDENTIALS"
                                             " or $MTL_PACS_USER/$MTL_PACS_PASSWORD")
        p.add_argument("--protocol", choices=["stow", "cstore"], help="default: the destination's protocol")
        p.add_argument("--max-attempts", type=int, default=10, help="attempts before an item is held (default 10)")
        p.add_argument("--backoff", type=float, default=30.0, help="first retry delay in seconds (doubles)")
        p.add_argument("--backoff-cap", type=float, default=3600.0, help="longest retry delay in seconds")

    send = sub.add_parser("send", help="queue DICOM files (each directory = one result set) and send them")
    common_args(send, dest_required=True)
    send.add_argument("--pattern", default="*.dcm", help="files taken from directories (default *.dcm)")
    send.add_argument("paths", nargs="+", help="DICOM files or directories")

    flush = sub.add_parser("flush", help="retry the items in the outbox that are due")
    common_args(flush, dest_required=False)
    flush.add_argument("--force", action="store_true", help="retry every item now, also not-due and held ones")

    status = sub.add_parser("status", help="list what waits in the outbox")
    status.add_argument("--outbox", default=os.environ.get(ENV_OUTBOX, "pacs_outbox"))
    status.add_argument("--json", action="store_true", help="print the item states as JSON")
    return parser


def _outbox(args: argparse.Namespace) -> Outbox:
    dest = Destination.from_file(args.dest) if args.dest else None
    if dest is not None and args.protocol:
        dest.check_protocol(args.protocol)
    return Outbox(args.outbox, dest=dest, credentials_file=args.credentials, protocol=args.protocol,
                  max_attempts=args.max_attempts, backoff_base=args.backoff, backoff_cap=args.backoff_cap)


def _report(outbox: Outbox, report: FlushReport) -> int:
    for item_id, error in report.failed.items():
        print(f"error: {item_id}: {error}", file=sys.stderr)
    print(f"sent {len(report.sent)} item(s); failed {len(report.failed)}; not due {len(report.not_due)}; "
          f"held {len(report.held)}; {report.pending} item(s) stay in outbox {outbox.root}")
    return 0 if report.ok else 1


def _status(root: str, as_json: bool) -> int:
    if not os.path.isdir(os.path.join(root, "pending")):
        print(f"outbox {root}: empty (no outbox folder)")
        return 0
    outbox = Outbox(root)
    pending = outbox.pending()
    if as_json:
        print(json.dumps(pending, indent=1))
    else:
        print(f"outbox {outbox.root}: {len(pending)} pending item(s), {len(outbox.sent())} sent")
        now = time.time()
        for s in pending:
            due = "held" if s["held"] else ("due" if s["next_attempt"] <= now else
                                            f"retry in {s['next_attempt'] - now:.0f}s")
            print(f"  {s['id']}: {len(s['instances'])} instance(s), {s['protocol']}, attempts {s['attempts']}, "
                  f"{due}; last error: {s['last_error']}")
    return 0 if not pending else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "status":
        return _status(args.outbox, args.json)
    try:
        outbox = _outbox(args)
        if args.command == "send":
            for label, files in collect_dicom_files(args.paths, args.pattern):
                outbox.enqueue(files, label=label)
        report = outbox.flush(force=getattr(args, "force", False))
    except (DestinationError, CredentialsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return _report(outbox, report)


if __name__ == "__main__":
    sys.exit(main())
