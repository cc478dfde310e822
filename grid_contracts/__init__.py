"""The protocol contracts: compiling the Solidity sources and deploying them."""
