"""nacosae dashboard: browse runs (read-only over the run directories).

The pages are declared in `common.pages` (st.navigation), so the first one is listed as
"Overview"; every sidebar choice lives in session state and holds across pages.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).parent))
from common import pages  # noqa: E402

st.set_page_config(page_title="nacosae", layout="wide")
st.navigation(pages()).run()
