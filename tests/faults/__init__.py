"""The fault suite (`make faults`): real processes, injected faults, the HTTP contract checked outside."""
