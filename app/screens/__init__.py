"""The dashboard's screens: the main board and the runs view."""
