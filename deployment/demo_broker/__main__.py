"""``python -m deployment.demo_broker [--host 127.0.0.1] [--port 8700] [--lose-responses N]``."""

from __future__ import annotations

import argparse

import uvicorn

from deployment.demo_broker.app import build_app
from deployment.demo_broker.book import Book


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deployment.demo_broker",
                                     description="A tiny in-memory broker for Stockade's broker bundle.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8700)
    parser.add_argument("--lose-responses", type=int, default=0, metavar="N",
                        help="book the first N new orders but answer 504, to show a retry is not a second trade")
    args = parser.parse_args(argv)
    book = Book(lose_responses=max(0, args.lose_responses))
    print(f"demo broker on http://{args.host}:{args.port}  (POST /orders, GET /orders, GET /positions)", flush=True)
    uvicorn.run(build_app(book), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
