"""Whether this process is stopping gracefully (SIGTERM): set once, read by the relays."""
import threading

# A threading.Event: set from the reactor's shutdown trigger, read on the event loop.
stopping = threading.Event()
