#!/usr/bin/env python3
"""Renders chat templates with jinja2 the way transformers does (trim_blocks, lstrip_blocks), as the
oracle for toga's ChatML renderer (run by tests/tokenizer/test_chat.cpp).

  usage: render_chat_template.py REQUEST.json RESPONSE.json
  REQUEST: {"template": str, "cases": [{"messages": [{"role", "content"}], "add_generation_prompt": bool}]}
  RESPONSE: [rendered str per case]

Exit status 3 when jinja2 is missing (the test then skips).
"""
import json
import sys

try:
    import jinja2
except ImportError:
    sys.stderr.write("the Python package `jinja2` is not installed\n")
    sys.exit(3)


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        req = json.load(f)
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(req["template"])
    out = [template.render(messages=c["messages"], add_generation_prompt=c["add_generation_prompt"])
           for c in req["cases"]]
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
