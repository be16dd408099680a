"""The browser apps: chat.py and agent.py (Streamlit pages), xcomposer/ (a Gradio app: ``python -m apps.xcomposer``)."""
