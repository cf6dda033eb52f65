"""`arvc ui`: the web interface (optional extra `arvc[ui]`, Gradio), a thin layer over the library."""
