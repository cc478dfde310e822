// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title Credit
/// @notice The grid's payment token: customers lock it in MetaScheduler, providers are paid in it.
contract Credit is ERC20, Ownable {
    constructor(uint256 _amountWei) ERC20("Credit", "CREDIT") {
        _mint(msg.sender, _amountWei);
    }

    /// @notice Creates credits; only the owner (the grid operator) may.
    function mint(address account, uint256 _amountWei) external onlyOwner {
        _mint(account, _amountWei);
    }
}
