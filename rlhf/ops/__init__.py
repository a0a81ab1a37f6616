"""Pure tensor math; imports torch only."""
