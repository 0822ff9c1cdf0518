"""nacosae dashboard: browse runs (read-only over the run directories).

The pages are declared here (st.navigation), so the first one is listed as "Overview"; every
sidebar choice lives in session state and holds across pages.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

HERE = Path(__file__).parent

st.set_page_config(page_title="nacosae", layout="wide")
st.navigation(
    [
        st.Page(HERE / "overview.py", title="Overview", default=True),
        st.Page(HERE / "pages" / "1_Images.py", title="Images"),
        st.Page(HERE / "pages" / "2_Reasoning.py", title="Reasoning"),
        st.Page(HERE / "pages" / "3_Compare.py", title="Compare"),
    ]
).run()
