#!/usr/bin/env python3
"""Fails when a crate's own docs show an intra-doc link as literal brackets.

rustdoc renders a link it cannot point anywhere (say `[keyroll]` in
keyroll-axum's docs, built on its own with `--no-deps`) as the text
`[keyroll]`, without a warning. `.ci/run` builds each library crate's docs
on its own and runs this over them:

    python3 .ci/doc_links.py target/doc keyroll_axum keyroll_sqlite ...

Only the crate's own text is read: code blocks, and the trait and blanket
implementations (other crates' docs) are skipped.
"""
import glob
import re
import sys

# Not an attribute such as `#[non_exhaustive]`.
LINK = re.compile(r"(?<!#)\[`?[A-Za-z_][A-Za-z0-9_:]*(?:\(\))?`?\]")
FOREIGN = ('id="trait-implementations"', 'id="synthetic-implementations"',
           'id="blanket-implementations"')


def own_text(html):
    for marker in FOREIGN:
        at = html.find(marker)
        if at >= 0:
            html = html[:at]
    html = re.sub(r"<pre[^>]*>.*?</pre>", "", html, flags=re.S)
    # Brackets inside code spans are code, not links.
    html = re.sub(r"<code>(?:(?!</code>).)*</code>",
                  lambda m: re.sub(r"[\[\]]", "", m.group(0)), html, flags=re.S)
    # The text of every link, whatever it holds, is linked: drop it.
    html = re.sub(r"<a [^>]*>.*?</a>", "", html, flags=re.S)
    return re.sub(r"<[^>]+>", "", html)


def main(root, crates):
    unlinked = 0
    for crate in crates:
        pages = glob.glob(f"{root}/{crate}/**/*.html", recursive=True)
        if not pages:
            print(f"no docs for {crate} under {root}")
            return 1
        for page in pages:
            text = own_text(open(page, encoding="utf-8").read())
            for found in LINK.finditer(text):
                unlinked += 1
                around = text[max(0, found.start() - 50):found.end() + 20]
                print(f"{page}: unlinked {found.group(0)}: ...{' '.join(around.split())}...")
    return 1 if unlinked else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
